"""landscapes"""
