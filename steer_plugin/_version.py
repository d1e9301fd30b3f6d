"""The package version, its one source: pyproject reads it (``[tool.hatch.version]``), files record it.

A floor-level module, so the stages that record the version (vectors, study) import it without importing the
package root, which re-exports every stage."""

__version__ = "0.1.0"
