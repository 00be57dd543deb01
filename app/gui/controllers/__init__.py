"""The pages' controllers: each is handed its collaborators (the session, the job runner, its
page, the banner...), never the window; the window composes them."""
