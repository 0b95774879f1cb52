"""ViT-native zero-cost proxies: DSS (TF-TAS), SWAP, MeCo and L-SWAG, one file each."""
