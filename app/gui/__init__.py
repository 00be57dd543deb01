"""The desktop window: widgets over the headless core (app.core); no computation lives here."""
