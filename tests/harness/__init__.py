"""Real-parts test harness: Docker engine, local images, stand-in services, app, Caddy, browser."""
