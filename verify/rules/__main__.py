"""``python -m verify.rules > docs/rules.md``: the page of registered rules, generated from the registry."""

from . import page

print(page(), end="")
