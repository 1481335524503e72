"""layra: add languages to a pretrained causal LM without forgetting the old ones.

layra train --config configs/gemma3-270m-layra-gl.yaml
layra vector extract runs/gl --out vectors/gl
"""

__version__ = "0.1.0"
