"""Read Prometheus text as a scraper does: samples by name and labels, whatever the
label order or number format of the exposition."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Labels = frozenset[tuple[str, str]]


def samples(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of the text, by (sample name, labels)."""
    found: dict[tuple[str, Labels], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name, frozenset(sample.labels.items())] = sample.value
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The one sample with exactly these labels; KeyError when there is none."""
    return samples(text)[name, frozenset(labels.items())]


def total(text: str, name: str) -> float:
    """The sum of every sample of `name`, whatever its labels."""
    return sum(v for (sample, _), v in samples(text).items() if sample == name)
