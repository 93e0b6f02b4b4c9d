"""DIM-4.6B painter: frozen Qwen2.5-VL encoder, MLP projector, SANA 1.5 DiT, DC-AE, flow DPM-Solver++."""
