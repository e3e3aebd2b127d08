from django.urls import path

from activity.views import ActivityApi, ActivityPageView

urlpatterns = [
    path("billing/activity/", ActivityPageView.as_view(), name="billing-activity-page"),
    path("api/billing/activity", ActivityApi.as_view(), name="billing-activity-api"),
]
