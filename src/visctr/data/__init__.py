"""Catalogs: where item images and categories come from."""

from visctr.data.catalog import Catalog, CatalogConfig, decode_image, load_catalog

__all__ = ["Catalog", "CatalogConfig", "decode_image", "load_catalog"]
