"""Which scenes there are and what they are: STAC search (pystac-client), each item's sensor, level and band
assets from its own metadata, the band catalogues, and how to reach the providers' storage."""
