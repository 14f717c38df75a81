"""Generation and inspection of OGBench manipulation datasets (design and data facts: docs/DATA.md).

``python -m datagen`` generates (``datagen.generate``, with the oracle recipe in ``datagen.recipe``);
``python -m datagen.info FILE`` inspects a file or shard directory and validates ``.npz`` files.
"""
