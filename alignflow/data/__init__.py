"""Data layer: canonical rows and the transformations between them."""
