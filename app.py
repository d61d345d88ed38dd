"""HI Explorer's entry point (and a Hugging Face Space's `app_file`): `python app.py [--help]`.

The UI lives in the `ui` package; installed, the same app is the `hi-explorer` command.
"""

from ui.app import main

if __name__ == "__main__":
    main()
