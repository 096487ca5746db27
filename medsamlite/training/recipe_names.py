"""The names of the student recipes (torch-free, so the command line lists them without importing torch)."""

RECIPE_NAMES = ("student-v1", "repvit-neck")
