"""`python -m narlm.tasks`: list the registered seqio tasks and mixtures."""

import seqio

import narlm.tasks as tasks


def main():
  for name in sorted(tasks.FINETUNING_TASKS + tasks.PRETRAINING_TASKS):
    task = seqio.get_mixture_or_task(name)
    print(f"task     {name:24s} splits={list(task.source.splits)}  "
          f"source={type(task.source).__name__}")
  for name in sorted(tasks.MIXTURES):
    mixture = seqio.get_mixture_or_task(name)
    rates = {t.name: mixture.get_rate(t) for t in mixture.tasks}
    print(f"mixture  {name:24s} rates={rates}")
  others = sorted((set(seqio.TaskRegistry.names()) | set(seqio.MixtureRegistry.names()))
                  - set(tasks.FINETUNING_TASKS + tasks.PRETRAINING_TASKS + tasks.MIXTURES))
  if others:
    print("other registered:", ", ".join(others))


if __name__ == "__main__":
  main()
