"""The Griffin model files that `save_pretrained` ships as Hub remote code (`auto_map`).

Everything in this folder is copied into a saved model folder, so the files are flat siblings importing each other
only as `from .x import Y`, and import nothing from the rest of the package (loaders, commands, engine plugins and
tools live outside it). The package's public names are re-exported by `hf_recurrentgemma/__init__.py`.
"""
