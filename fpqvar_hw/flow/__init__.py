"""Build flow: unit registry, synthesis, resources, throughput model, lint, platforms,
Vivado collateral.  The top layer: may import every layer below."""
