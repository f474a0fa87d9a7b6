"""Catalogs: where item images and categories come from."""

from visctr.data.catalog import Catalog, CatalogConfig, load_catalog

__all__ = ["Catalog", "CatalogConfig", "load_catalog"]
