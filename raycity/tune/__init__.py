"""The only Ray code in raycity: the trainable, the experiment driver, the driver-side recorder,
cluster resources, the fold-mean scheduler and searcher, and search spaces. Everything it drives
(model, data, metrics, engine, the fold recipe) is plain PyTorch and runs without Ray."""
