"""igkd's version (pyproject.toml's), in a module of its own: lower floors read it without importing the
package root, which re-exports the public face."""

__version__ = "0.1.0"
