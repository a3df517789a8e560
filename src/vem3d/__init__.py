"""vem3d: 3D models of cells and organelles from volumetric electron-microscopy stacks."""

__version__ = "0.1.0"
