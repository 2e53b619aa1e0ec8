from bulkpix.cli import entry

entry()
