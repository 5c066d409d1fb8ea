"""The 6.1 (current profile) Xen PV guest on Xen 4.17 (issue 12, step 2)."""
