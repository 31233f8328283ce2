//! Hollow nodes (not written yet).
