"""Data planes, picked by the name the config uses."""
