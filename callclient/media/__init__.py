"""Media building blocks: device interfaces, virtual and real devices, tracks, encoding, rendering,
mixing, playout and measurement. Import the module you need; the public names are re-exported by
:mod:`callclient`."""
