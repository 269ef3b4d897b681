"""Historical bookings: import a bookings table, replay it as dispatch days, fit the generator to it.

The counterpart of the original ``collect_historical_data.py --days 90``, one concept per module:

==============  ==============================================================================
``schema``      the table's columns, categories and ranges (its docstring is the file format),
                and the :class:`ImportReport`
``validation``  parsing and checking every row (bad rows raise or are skipped and counted)
``sources``     reading and writing the table: CSV, Parquet, any SQLAlchemy URL, atomically
``replay``      a validated table -> one :class:`~rl_lib.envs.day.Day` per service date
``fit``         the synthetic generator's demand and geography fitted to a table
``sample``      a sample table from the generator (``rl-lib data sample``)
``cli``         ``rl-lib data sample | import``
==============  ==============================================================================

The names below load on first use (:func:`rl_lib.lazy.lazy_attributes`): ``rl-lib --help`` imports
:mod:`.cli`, and with it this package, which must not pull pandas, SQLAlchemy and scipy.
"""

from rl_lib.lazy import lazy_attributes

_LAZY = {
    **dict.fromkeys(
        ("COLUMNS", "COORDS", "MOBILITIES", "ON_ERROR", "PRIORITIES", "WINDOW_RANGE", "ImportReport"),
        "rl_lib.scenarios.historical.schema",
    ),
    **dict.fromkeys(("read_bookings", "write_bookings"), "rl_lib.scenarios.historical.sources"),
    "days_from_bookings": "rl_lib.scenarios.historical.replay",
    **dict.fromkeys(("fit_scenario", "save_scenario"), "rl_lib.scenarios.historical.fit"),
    **dict.fromkeys(("SAMPLE_END", "sample_table", "write_sample"), "rl_lib.scenarios.historical.sample"),
}
__all__ = list(_LAZY)
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY)
