"""Exporting what a run learned: surface meshes (:mod:`.mesh`)."""

from privnerf.export.mesh import MESH_SUFFIXES, extract_mesh, mesh_from_run, write_mesh

__all__ = ["MESH_SUFFIXES", "extract_mesh", "mesh_from_run", "write_mesh"]
