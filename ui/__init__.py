"""The explorer's web UI (Gradio) over `hi_core`: `ui.app.build_demo()` builds it, `ui.app.main()` serves it,
`ui.settings.Settings` says what a visitor may do when it is public."""
