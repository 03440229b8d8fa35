"""Every test folder is a package, so a helper has one name (`tests.chain.chain_toys`) wherever
it is imported, and no test reaches another folder's conftest through a bare `conftest` import."""
