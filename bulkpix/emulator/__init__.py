"""A stand-in for Earth Engine's REST ``getPixels`` service (never used by the download path).

    async with run_emulator(EmulatorConfig(synthetic={...})) as emu:
        emu.url, emu.log, emu.config
"""

from bulkpix.emulator.config import EmulatorConfig, FaultConfig, SyntheticAsset
from bulkpix.emulator.log import LOG_FIELDS
from bulkpix.emulator.server import Emulator, emulator_in_thread, run_emulator
from bulkpix.emulator.synthetic import SYNTHETIC_BANDS, synthetic_pixels

__all__ = [
    "LOG_FIELDS",
    "SYNTHETIC_BANDS",
    "Emulator",
    "EmulatorConfig",
    "FaultConfig",
    "SyntheticAsset",
    "emulator_in_thread",
    "run_emulator",
    "synthetic_pixels",
]
