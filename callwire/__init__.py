"""callwire: the contract both halves share, and nothing else.

The wire protocol (:mod:`callwire.protocol`), every numeric code (:mod:`callwire.codes`), the
enums whose values travel on the wire (:mod:`callwire.enums`), the userSig format
(:mod:`callwire.usersig`), the development credentials (:mod:`callwire.dev`), the
command-line value types both programs use (:mod:`callwire.argtypes`), the release version
(:mod:`callwire.version`) and the import of optional dependencies that names the extra to
install (:mod:`callwire.extras`). It imports neither ``callclient`` nor ``signaling_server``;
both import it.
"""
