"""Cost reporting at run time: the torch-free timing files and AER (``aer``), the training callback (``timing``),
and the gradient traffic per optimizer step by adaptation method (``traffic``)."""
