"""Cost reporting at run time: the torch-free timing files and AER (``aer``), the training callback (``timing``)."""
