"""Host side: reference executor (isa_sim), compiler (package -> DRAM image + programs),
driver (host loop of the digits VAR, backends).  Imports engines, units and the base layer."""
