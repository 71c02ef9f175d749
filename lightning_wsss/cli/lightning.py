"""``wsss fit|validate|test|predict``: LightningCLI over every task and DataModule of the suite.

Configs use ``class_path``/``init_args`` or short class names (``model: CAMClassifier``); the model's
``num_classes`` is linked to the DataModule's, so a config names the classes once (in the data set).
The resolved config is saved next to the logs with ``overwrite=True`` so W&B and the config saver coexist.
"""

from __future__ import annotations

from typing import List, Optional

import lightning as L
from lightning.pytorch.cli import LightningCLI


class WSSSLightningCLI(LightningCLI):
    """LightningCLI with the suite's tasks and DataModules registered and ``num_classes`` linked."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")


def _register_classes() -> None:
    """Import the modules whose classes configs may name by short name."""
    import lightning_wsss.callbacks  # noqa: F401
    import lightning_wsss.datamodules  # noqa: F401
    import lightning_wsss.tasks  # noqa: F401


def run_lightning_cli(argv: Optional[List[str]] = None) -> WSSSLightningCLI:
    """Run the LightningCLI with ``argv`` (e.g. ``["fit", "--config", "experiments/x.yaml"]``)."""
    _register_classes()
    return WSSSLightningCLI(
        L.LightningModule,
        L.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=argv,
        auto_configure_optimizers=False,
    )
