"""The filecluster client: a library (client.api), the `filecluster` command and a menu."""
