"""HTTP concerns: parsing bodies, mapping domain exceptions to responses."""
