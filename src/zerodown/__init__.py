"""zerodown: deploy web services on your own servers without dropping a request."""

__version__ = "0.1.0"
