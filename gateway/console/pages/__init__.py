"""The console's pages: each module registers its handlers with `Console.page` and
renders templates of `gateway/web/templates` named after it."""
