"""Host side: reference executor (isa_sim), step plan, compiler (package -> DRAM image +
programs), the quantized package and host models (package), block backends (backends),
driver (host loop of the digits VAR, outputs, CLI), co-simulation and bundle runners.
Imports engines, units and the base layer."""
