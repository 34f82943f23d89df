"""EXL2 folders (ExLlamaV2's variable-bit format, the card's fourth quantized release) through exllamav2's own
converter. exllamav2 measures and quantizes with CUDA kernels only, so this runs on a CUDA GPU with
`pip install exllamav2`; anywhere else it says so before doing any work."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from openhermes import outputs
from openhermes.export.gguf import ExportError


def exl2_unavailable() -> str | None:
    """Why EXL2 cannot be written here, or None when it can."""
    import torch

    if not torch.cuda.is_available():
        return ("EXL2 needs a CUDA GPU: exllamav2 measures and quantizes with CUDA kernels only, and none is "
                "available here. GPTQ and AWQ (--to gptq, --to awq) run on this machine.")
    if importlib.util.find_spec("exllamav2") is None:
        return "EXL2 needs exllamav2: pip install exllamav2"
    return None


def export_exl2(model_dir: str | Path, out: str | Path, texts: list[str], *, bits: float = 4.0,
                seq_len: int = 2048, overwrite: bool = False) -> Path:
    """Convert a model folder at `bits` bits per weight on average, calibrated on `texts` (the recipe's
    prepared windows as text), into the folder `out` (exllamav2's --compile_full output)."""
    if (why := exl2_unavailable()) is not None:
        raise ExportError(why)
    import pyarrow as pa
    import pyarrow.parquet as pq

    target = Path(out)
    outputs.check_folder(target, "quantized-model", overwrite)

    def fill(tmp: Path) -> None:
        # named as staging: a killed run's scratch is cleared by the next run's
        with tempfile.TemporaryDirectory(dir=tmp.parent, prefix=f"{tmp.name}-scratch-") as scratch:
            calibration = Path(scratch) / "calibration.parquet"
            pq.write_table(pa.table({"text": texts}), calibration)
            work = Path(scratch) / "work"
            compiled = Path(scratch) / "compiled"
            cmd = [sys.executable, "-m", "exllamav2.conversion.convert_exl2", "-i", str(model_dir), "-o", str(work),
                   "-cf", str(compiled), "-b", str(bits), "-c", str(calibration), "-r", str(len(texts)),
                   "-mr", str(min(16, len(texts))), "-l", str(seq_len), "-ml", str(seq_len)]
            # its argument errors exit with status 0, so success is a compiled folder, not the status alone
            if subprocess.run(cmd).returncode != 0 or not (compiled / "config.json").exists():
                raise ExportError(f"exllamav2's converter failed, see its output above (command: {' '.join(cmd)})")
            for item in compiled.iterdir():
                shutil.move(str(item), tmp / item.name)

    return outputs.write_folder(target, "quantized-model", fill, overwrite=overwrite)
