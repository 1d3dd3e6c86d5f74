"""The export stage (torch side): diffusers folders and single-file checkpoints -> torch modules -> engine packages.

:mod:`.source` reads what the user downloaded (:mod:`.weights`; :mod:`.single_file` converts LDM / SGM files,
named as :mod:`diffrt.runtime.ldm_names` describes), :mod:`.models` rebuilds the networks, :mod:`.components` wraps
them to their shape contracts, :mod:`.onnx_export` traces and checks each graph and :mod:`.package` writes the
package, all or nothing.
:mod:`diffrt.runtime.lora` reads LoRA adapters; :mod:`.lora_package` fuses them at export or swaps them in a
package, and :mod:`diffrt.kernels.lora_slots` gives graphs inputs for run-time adapters.
:mod:`.tiny` and :mod:`.train_demo` write the demo sources. From the runtime it takes only its errors, the networks'
shape contracts, the package schema and the torch-free LoRA / safetensors readers.
"""
