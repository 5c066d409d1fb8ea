"""earlymm diff: what changed between two address spaces (two cores, two CR3s, two boot phases)."""
