"""Hot reload: diff an organism file against the running one and apply it per agent."""
