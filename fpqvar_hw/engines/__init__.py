"""Engines and the top: AXI plumbing, controller, matrix engine, vector engine, accelerator
top.  Imports units and the base layer only."""
