from kelpseg.cli import app

app()
