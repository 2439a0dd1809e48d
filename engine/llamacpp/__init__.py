"""llama.cpp's server through llama-cpp-python: a second real engine, one Andes does not control."""
