"""Asset processing, like AEM's DAM Update Asset workflow with offloaded steps."""
