"""Learning tasks: what is trained, on what kind of examples, with which model."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from .models import MLP, build_model

__all__ = ["Task", "TASKS", "get_task"]


@dataclass(frozen=True)
class Task:
    name: str
    title: str
    description: str
    num_features: int
    num_classes: int
    model: str = "2nn"

    def build_model(self) -> MLP:
        return build_model(self.model, self.num_features, self.num_classes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Task:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


TASKS: dict[str, Task] = {
    "mnist": Task(
        name="mnist",
        title="Handwritten digits",
        description="Recognise handwritten digits (0-9) from 28x28 grayscale images.",
        num_features=784,
        num_classes=10,
    ),
}


def get_task(name: str, model: str | None = None) -> Task:
    try:
        task = TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {', '.join(TASKS)}") from None
    if model is not None and model != task.model:
        build_model(model)  # validates the name
        task = Task(**{**task.to_dict(), "model": model})
    return task
