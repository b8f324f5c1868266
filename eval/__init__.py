"""Evaluation: CorLoc object discovery, POPE and CHAIR hallucination benchmarks, run folders and reports."""
