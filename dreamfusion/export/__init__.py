"""Exports: mesh files, turntable video, HTML preview."""
