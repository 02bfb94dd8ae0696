"""The demo's model: the default GSB digits model, trained once and exported.

``make demo`` (``python -m host demo``) runs it; the training and the export
are model-level work, so the host's command line only asks for the file.
"""

from __future__ import annotations

import os
from pathlib import Path

from model import modelfile

#: The demo's training recipe (relative to the repository root, where ``make demo`` runs).
DEMO_CONFIG = "configs/digits.yaml"


def demo_model(out: Path, progress: bool) -> Path:
    """Train (or reuse) the default GSB digits model and export it into ``out``; returns the model file.

    A model file in ``out`` that carries an integer program is reused; an
    older one without it is exported again (the training resumes from its
    checkpoints, so it is not repeated).
    """
    import torch

    from model.config import load_config
    from model.export import export_checkpoint
    from model.train import train

    path = out / "gsb-digits.gsbf"
    run = out / "runs" / "gsb"
    if path.exists():
        try:
            if modelfile.load(path).integer is not None:
                print(f"demo: reusing {path} (delete it to train again)")
                return path
        except modelfile.ModelFileError:
            pass
        print(f"demo: {path} has no integer program (an older export): exporting again")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print("demo: training the default digits model: a full-precision teacher, then GSB in two stages "
          f"({DEMO_CONFIG}, 100 images per class, seed 0) into {run.parent}; a few minutes on 2 cores")
    metrics = train(load_config(DEMO_CONFIG), "gsb", 0, str(run), resume=True, progress=progress)
    print(f"demo: torch GSB model: validation {metrics['val_acc']:.2f}%, test {metrics['test_acc']:.2f}%")
    modelfile.save(export_checkpoint(str(run / "best.pt")), path)
    print(f"demo: exported {path} ({os.path.getsize(path)} bytes)")
    return path
